"""Demo data: a synthetic subscription business and a real dataset shipped inside a package."""
