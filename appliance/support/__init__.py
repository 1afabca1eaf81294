"""Support: the site's audit trail, the redacted and signed support export, and the
vendor's offline HTML report over one or many exports."""
