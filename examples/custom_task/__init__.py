"""A minimal user-defined task: see README.md in this folder."""
