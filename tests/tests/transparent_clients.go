// A Go client for tests/tests/transparent_clients.rs, compiled on the host with Debian's Go
// 1.19 (CGO_ENABLED=0, so the pure-Go resolver reads the sandbox's /etc/resolv.conf) and run
// inside the sandbox.
//
//	client default URL   http.DefaultClient: honours HTTP_PROXY/HTTPS_PROXY
//	client bare URL      &http.Client{Transport: &http.Transport{}}: no Proxy, so it
//	                     ignores the proxy variables by design and dials the name itself
//
// Prints "status=N" and the body, or "error=..." and exits 1.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Println("error=usage: client default|bare URL")
		os.Exit(2)
	}
	var client *http.Client
	switch os.Args[1] {
	case "default":
		client = http.DefaultClient
	case "bare":
		client = &http.Client{Transport: &http.Transport{}}
	default:
		fmt.Printf("error=unknown mode %s\n", os.Args[1])
		os.Exit(2)
	}
	response, err := client.Get(os.Args[2])
	if err != nil {
		fmt.Printf("error=%v\n", err)
		os.Exit(1)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		fmt.Printf("error=reading the body: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("status=%d\n%s", response.StatusCode, body)
}
