"""Framework-free core: numpy only, never imports a deep-learning framework."""
