"""Small pieces shared across packages (atomic files, ...)."""
