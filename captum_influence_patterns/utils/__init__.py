"""Helpers every part of the library uses: atomic JSON files (:mod:`.files`), the
torch thread count (:mod:`.threads`), the rule of the registries (:mod:`.registry`)
and the Captum internals the library reuses (:mod:`._captum_compat`)."""
