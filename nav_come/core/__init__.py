"""The ground floor: infrastructure every layer above may import; it imports nothing above it."""
