"""keyflow flows: thin orchestration (parameters, fan-out, summary). No SDK imports here."""
