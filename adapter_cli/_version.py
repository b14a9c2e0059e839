"""The package version, in a module of its own so that anything can read it without importing the
package's lazy attributes (and without an import cycle through adapter_cli/__init__)."""

__version__ = "0.1.0"
