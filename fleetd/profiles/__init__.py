"""Auth profiles: one login or API key each; secrets in the OS keyring, never in the database."""
