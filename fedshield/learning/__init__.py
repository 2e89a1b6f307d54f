"""What every learner uses: model import and loading (more moves here in later rounds)."""
