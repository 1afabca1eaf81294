"""bundler package."""
