"""One router per resource: tracks, runs (upload and reads), registrations, submissions, admin; and the HTML pages."""
