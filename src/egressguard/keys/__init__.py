"""Customer-managed keys: providers (built-in vault, PKCS#11 HSM) and envelope encryption."""
