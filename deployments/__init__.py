"""Provider presets (method definitions) and the tooling to register and deploy them."""
