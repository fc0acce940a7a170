"""Adapters to the outside world: DynamoDB, S3, source databases, warehouses. The only SDK importers."""
