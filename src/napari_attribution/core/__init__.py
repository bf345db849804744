"""Pure computational core: torch and numpy only (no Qt, no napari)."""
