"""Conclave's command-line front door and the infrastructure its servers share."""
