"""Golden vector sets cut from the `fixed` NumPy reference; read by every other executor's tests."""
