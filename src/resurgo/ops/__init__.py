"""Operations: backup, restore, check, ... pipelines over a Repository."""
