"""The click shell over the deployer library."""
