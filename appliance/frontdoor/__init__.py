"""The front door: one stable HTTPS address per service, served by HAProxy in front of releases.

Pure pieces (config rendering, canary decisions) do no IO; `runtime_api` talks to a
running HAProxy; `tls` and `token` make and check the site's certificate and token;
`container` is the hardened proxy container's spec for the docker SDK.
"""
