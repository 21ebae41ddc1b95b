"""The standard variant catalog (data): installed as ``fatdispatch.variants``; see README.md here."""
