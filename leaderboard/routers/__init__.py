"""One router per resource: tracks, runs (upload and reads), submissions, admin; and the HTML pages."""
