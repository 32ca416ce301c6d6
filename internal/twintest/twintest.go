// Package twintest checks build-tag twins: the files of a package built with the cuda tag
// and their `_nocuda` counterparts must export the same functions and methods with the
// same signatures, so the packages above compile unchanged either way. Tests only.
package twintest

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"slices"
	"testing"
)

// API lists every exported top-level function and method of the named files as
// "Recv.Name" → "func(params) results".
func API(t testing.TB, files ...string) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	out := map[string]string{}
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range af.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || !fd.Name.IsExported() {
				continue
			}
			key := fd.Name.Name
			if fd.Recv != nil {
				var b bytes.Buffer
				printer.Fprint(&b, fset, fd.Recv.List[0].Type)
				key = b.String() + "." + key
			}
			var b bytes.Buffer
			printer.Fprint(&b, fset, fd.Type)
			out[key] = b.String()
		}
	}
	return out
}

// Check reports every function that differs between the tagged files and their twins, or
// exists in only one of them; fewer than minFuncs in the tagged files means the files
// were not the ones meant.
func Check(t testing.TB, minFuncs int, tagged, twins []string) {
	t.Helper()
	with, without := API(t, tagged...), API(t, twins...)
	if len(with) < minFuncs {
		t.Fatalf("parsed only %d exported funcs from %v", len(with), tagged)
	}
	var keys []string
	for k := range with {
		keys = append(keys, k)
	}
	for k := range without {
		if _, ok := with[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch a, b := with[k], without[k]; {
		case b == "":
			t.Errorf("%s only in the cuda build", k)
		case a == "":
			t.Errorf("%s only in the nocuda build", k)
		case a != b:
			t.Errorf("%s: cuda %q, nocuda %q", k, a, b)
		}
	}
}
