"""Pure functions, one file (or folder) per recurrence family: reference loop beside the fast forms."""
