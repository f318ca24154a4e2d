"""VLBC (WACV 2024): its DiffAE generator."""
