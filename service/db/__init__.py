"""Persistence: SQLAlchemy Core over psycopg 3. Stores and finds; decides nothing."""
