package vmtest

// FilesOutside is filesOutside for the external tests.
var FilesOutside = filesOutside
