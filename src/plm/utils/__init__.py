"""Small shared helpers: atomic files, safe loading, seeding, hashing."""
