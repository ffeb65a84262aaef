"""Reports to authorities and the public, drafted from decisions, never sent by
themselves: an admin reviews a draft and presses submit.

- ``relay.reports.ncmec``: the US CyberTipline report (XML) and NCMEC's API;
- ``relay.reports.uk``: the UK referral (interim code, Appendix 6) and IWF URL reports;
- ``relay.reports.sor``: DSA statements of reasons and the Transparency Database's API;
- ``relay.reports.transparency``: the figures a transparency report publishes.
"""

__all__: list[str] = []
