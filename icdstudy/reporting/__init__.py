"""What people read: the report, its figures and the data card."""
