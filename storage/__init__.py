"""Where photos come from (a local folder, S3) and where their faces go (PostgreSQL with pgvector)."""
