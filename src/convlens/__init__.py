"""convlens: train, track and serve CNNs, and see what they learn."""
