"""keyflow tasks: small Prefect tasks over adapters (``tasks.io``) and pure functions (``tasks.transforms``)."""
