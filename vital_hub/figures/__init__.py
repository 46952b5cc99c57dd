"""PMC figures: fetch them from PMC's 2026 cloud layout (or legacy tarballs), verify them, index them, and
build the `figures` dataset config that every later stage reads."""
