"""The SQL stores: SQLite and PostgreSQL, one store over each database's driver."""
