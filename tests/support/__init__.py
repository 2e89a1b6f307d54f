"""What several test modules share: harnesses, emulators and fixtures' building blocks (no tests here)."""
