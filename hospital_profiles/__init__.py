"""The profiles shipped with medadapt: templates for a site's own, and the demo's sites."""
