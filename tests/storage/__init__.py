"""Store backends: each module runs the store contract (``storage.testing.contract``) on one."""
