"""What a user looks at: plots and submission files."""
