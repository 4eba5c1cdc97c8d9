"""What every layer shares: errors, the topic and view registries, settings."""
