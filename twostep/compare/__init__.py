"""`twostep bench`: the paper's strategies compared side by side on the real serving path."""
