"""Work-notification transports. A notification is only a hint: Postgres is the truth."""
