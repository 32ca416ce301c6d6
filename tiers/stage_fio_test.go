package tiers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkStageVsFio is staging throughput against fio's random reads of
// the same page span on the same files, interleaved: the SSD tier's
// segment files hold two sets of pages (newStageBench, FM_STAGE_PAGES per
// set, default 2048: three 256 MiB segments), and each round stages sets
// for FM_ROUND_SECONDS (default 0.5), then runs fio (randread, O_DIRECT,
// libaio, bs = the record's 4 KiB-aligned span) on the full segments for
// as long at each iodepth of FM_FIO_QD (default "16 32"). Rounds:
// FM_ROUNDS (default 20); run it with -benchtime 1x.
//
// Comparing with fio on another file minutes apart, and with the best of
// four fio runs, is what made the ratio swing 0.67–1.02 on the dev VM: the
// virtio disk's rate moves by 2× within a second or two (other tenants,
// the host's cache), and a best-of-four is biased up by that noise. Here
// fio reads the very extents staging reads, fio's best iodepth is the one
// with the highest median rate over the rounds, and x-fio is the median
// over the rounds of staging's pages/s ÷ fio's IOPS at that iodepth in the
// same round (x-fio-min the lowest round).
//
// Staging reads a record's 4 KiB-aligned span, 37 or 38 blocks for a
// 149,808 B record (records are packed, not aligned: 37.57 on average, 1.5
// % more than fio's 37-block reads), and counts the page's bytes.
func BenchmarkStageVsFio(b *testing.B) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		b.Skip("fio is not installed (Debian: apt-get install fio)")
	}
	pages := 2048
	if v := envInt("FM_STAGE_PAGES"); v > 0 {
		pages = v
	}
	round := 0.5
	if v, err := strconv.ParseFloat(os.Getenv("FM_ROUND_SECONDS"), 64); err == nil && v > 0 {
		round = v
	}
	rounds := 20
	if v := envInt("FM_ROUNDS"); v > 0 {
		rounds = v
	}
	qds := []int{16, 32}
	if v := os.Getenv("FM_FIO_QD"); v != "" {
		qds = nil
		for _, f := range strings.Fields(v) {
			q, err := strconv.Atoi(f)
			if err != nil || q <= 0 {
				b.Fatalf("FM_FIO_QD %q: want iodepths, e.g. \"16 32\"", v)
			}
			qds = append(qds, q)
		}
	}
	f := newStageBench(b, pages)
	span := alignUp(int64(pageHeaderSize+f.page), directAlign)
	// fio reads the segments that are full; the last one is partly
	// preallocated space, which reads as zeros without touching the disk.
	segs, err := filepath.Glob(filepath.Join(f.dir, segDirName, "*"+segSuffix))
	if err != nil || len(segs) < 2 {
		b.Fatalf("want ≥ 2 segment files, have %v (%v): raise FM_STAGE_PAGES", segs, err)
	}
	slices.Sort(segs)
	files := strings.Join(segs[:len(segs)-1], ":")

	f.stage(1) // fills the mirror
	set := 0
	var ratios, stageRates []float64
	fioRates, qdRatios := map[int][]float64{}, map[int][]float64{}
	var qdSum float64
	for r := range rounds {
		b.ResetTimer()
		a0, busy0 := f.st.SSD().direct.qd.read()
		t0 := time.Now()
		staged := 0
		for time.Since(t0).Seconds() < round {
			f.stage(set)
			set ^= 1
			staged += f.pages
		}
		secs := time.Since(t0).Seconds()
		a1, busy1 := f.st.SSD().direct.qd.read()
		qd := (a1 - a0) / max(busy1-busy0, 1e-9)
		qdSum += qd
		stagePS := float64(staged) / secs
		best := 0.0
		line := fmt.Sprintf("round %d (load %s): staging %.0f pages/s = %.0f MB/s (page bytes), qd %.1f", r+1, loadAvg(), stagePS, stagePS*float64(f.page)/1e6, qd)
		for _, q := range qds {
			iops, bw, lat := runFio(b, fio, files, span, q, round)
			fioRates[q] = append(fioRates[q], iops)
			qdRatios[q] = append(qdRatios[q], stagePS/iops)
			best = max(best, iops)
			line += fmt.Sprintf("; fio iodepth %d %.0f IOPS = %.0f MB/s, clat %.2f ms", q, iops, bw/1e6, lat*1e3)
		}
		ratios = append(ratios, stagePS/best)
		stageRates = append(stageRates, stagePS)
		b.Logf("%s; staging/fio best %.2f", line, stagePS/best)
	}
	b.StopTimer()
	b.ReportMetric(median(stageRates)*float64(f.page)/1e6, "stage-MB/s")
	// fio's best iodepth is the one with the highest median rate; x-fio
	// is the median of the rounds' staging ÷ fio at that iodepth. (The
	// better of the round's fio runs, x-fio-roundbest, is a maximum of
	// noisy samples: biased up by the disk's noise, not by staging.)
	bestQ := qds[0]
	for _, q := range qds {
		b.ReportMetric(median(fioRates[q])*float64(span)/1e6, fmt.Sprintf("fio%d-MB/s", q))
		b.ReportMetric(median(qdRatios[q]), fmt.Sprintf("x-fio%d", q))
		if median(fioRates[q]) > median(fioRates[bestQ]) {
			bestQ = q
		}
	}
	b.ReportMetric(float64(bestQ), "fio-best-iodepth")
	b.ReportMetric(median(qdRatios[bestQ]), "x-fio")
	b.ReportMetric(slices.Min(qdRatios[bestQ]), "x-fio-min")
	b.ReportMetric(median(ratios), "x-fio-roundbest")
	b.ReportMetric(qdSum/float64(rounds), "stage-qd")
}

// runFio runs fio's O_DIRECT random reads of bs bytes on files at iodepth
// for secs and returns its IOPS, bytes/s and mean completion latency (s).
func runFio(b *testing.B, fio, files string, bs int64, iodepth int, secs float64) (iops, bw, lat float64) {
	out, err := exec.CommandContext(context.Background(), fio, "--name=randread", "--filename="+files, "--readonly",
		"--rw=randread", "--bs="+strconv.FormatInt(bs, 10), "--direct=1", "--ioengine=libaio",
		"--iodepth="+strconv.Itoa(iodepth), fmt.Sprintf("--runtime=%dms", int(secs*1000)), "--time_based",
		"--output-format=json").Output()
	if err != nil {
		b.Fatalf("fio: %v: %s", err, out)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				BW   float64 `json:"bw_bytes"`
				IOPS float64 `json:"iops"`
				Clat struct {
					Mean float64 `json:"mean"`
				} `json:"clat_ns"`
			} `json:"read"`
		} `json:"jobs"`
	}
	// fio may print notes before its JSON.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		b.Fatalf("fio output: %v: %.200s", err, out)
	}
	r := res.Jobs[0].Read
	return r.IOPS, r.BW, r.Clat.Mean / 1e9
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
