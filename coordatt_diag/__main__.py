"""``python -m coordatt_diag`` runs the command-line interface."""

from coordatt_diag.cli import main

if __name__ == "__main__":
    main()
