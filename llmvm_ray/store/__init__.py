"""Everything persisted, under ``storage_path``: the filesystem helper and example datasets."""
