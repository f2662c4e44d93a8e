"""Built-in task kinds. Kept import-free so a ``call`` worker process starts without loading the rest."""
