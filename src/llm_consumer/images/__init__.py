"""Images: source fetching (SSRF-safe), decoding and checks, visual themes, storage."""
