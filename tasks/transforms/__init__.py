"""Pure functions: rules, SQL text, staging layout, type mapping. No Prefect, no I/O."""
