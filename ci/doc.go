// Package ci holds checks of the project's CI configuration: the GitHub
// workflow is linted with actionlint, as a test, so a broken workflow fails
// `make test` here rather than on GitHub.
package ci
