"""keyflow configuration: pydantic models of the YAML rules and profiles, and their loader."""
