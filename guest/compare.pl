#!/usr/bin/perl
# guest/compare.pl CONSOLE_LOG JSON_OUT: the dmakit driver's random reads against the kernel's
# nvme driver with fio, from one guest boot's console. Reads the test binary's lines
#   bench nvme/randread_4k_qd1 dmakit_ns_per_op=... ios=N ...
# and fio's JSON report (lines prefixed "fio-json: "), whose jobs randread_4k_qd{1,32}[_2q]
# (libaio, interrupts) and polled_randread_4k_qd{1,32}[_2q] (io_uring --hipri) are the
# kernel's side (_2q: two jobs against dmakit's two queue pairs); writes the rows in
# dmakit-bench's format
# ({name, peer, ns_per_op, peer_ns_per_op, ratio}, ratio = dmakit / kernel, wall time per
# read for the same count) to JSON_OUT and prints them as dmakit-bench prints its table.
# Exits 1, saying why, when a side is missing, fio reported an error or the counts differ.
use strict; use warnings;
use JSON::PP;
my ($log, $out) = @ARGV;
open(my $f, '<', $log) or die "compare: $log: $!";
my (%dmakit, $fio_text);
while (<$f>) {
    if (/^bench (\S+) dmakit_ns_per_op=([0-9.]+) ios=(\d+)/) {
        $dmakit{$1} = { ns => $2, ios => $3 };
    } elsif (s/^fio-json: //) {
        $fio_text .= $_;
    }
}
close $f;
my @why;
my %kernel;
if (!defined $fio_text) {
    push @why, "no fio report in the console (see the guest: fio lines above)";
} else {
    $fio_text =~ s/^[^{]*//s;    # fio may print notes before the JSON
    my $r = eval { decode_json($fio_text) };
    if (!$r) {
        push @why, "fio's report is not JSON: $@";
    } else {
        for my $j (@{ $r->{jobs} }) {
            my $rd = $j->{read};
            if ($j->{error}) {
                push @why, "fio job $j->{jobname} failed with error $j->{error}";
                next;
            }
            $kernel{$j->{jobname}} = {
                ios => $rd->{total_ios},
                ns  => $rd->{total_ios} ? $rd->{runtime} * 1e6 / $rd->{total_ios} : 0,
                ms  => $rd->{runtime},
            };
        }
    }
}
# fio job => peer; the jobs named warmup are untimed. Each depth also runs on two queue
# pairs in two threads (dmakit) against two fio jobs (the kernel): names ending in _2q.
my @peers = (['', 'kernel nvme + fio (libaio, O_DIRECT, interrupts)'],
             ['polled_', 'kernel nvme + fio (io_uring --hipri, O_DIRECT, polled)']);
my @rows;
for my $p (@peers) { for my $qd ('1', '32', '1_2q', '32_2q') {
    my ($prefix, $peer) = @$p;
    my $name = "nvme/randread_4k_qd$qd";
    my ($d, $k) = ($dmakit{$name}, $kernel{"${prefix}randread_4k_qd$qd"});
    $peer =~ s/fio \(/fio, 2 jobs (/ if $qd =~ /_2q$/;
    if (!$d) { push @why, "no dmakit result for $name (its test failed or did not run)"; next }
    if (!$k) { push @why, "no kernel result for $name from fio job ${prefix}randread_4k_qd$qd"; next }
    if ($d->{ios} != $k->{ios}) {
        push @why, "$name: dmakit read $d->{ios} times, fio $k->{ios}: not the same count";
        next;
    }
    if ($k->{ms} <= 0) { push @why, "$name: fio measured no time"; next }
    push @rows, { name => $name, peer => $peer, ns_per_op => $d->{ns} + 0,
                  peer_ns_per_op => $k->{ns} + 0, ratio => $d->{ns} / $k->{ns} };
} }
# How each driver scales from one queue pair (one fio job) to two: wall time per read on
# two over wall time per read on one (below 1: the second queue pair helps).
for my $qd (1, 32) {
    my ($one, $two) = ($dmakit{"nvme/randread_4k_qd$qd"}, $dmakit{"nvme/randread_4k_qd${qd}_2q"});
    next unless $one && $two;
    push @rows, { name => "nvme/randread_4k_qd$qd/2_queues", peer => 'dmakit, 1 queue pair',
                  ns_per_op => $two->{ns} + 0, peer_ns_per_op => $one->{ns} + 0,
                  ratio => $two->{ns} / $one->{ns} };
    my ($k1, $k2) = ($kernel{"randread_4k_qd$qd"}, $kernel{"randread_4k_qd${qd}_2q"});
    next unless $k1 && $k2 && $k1->{ns} > 0;
    push @rows, { name => "nvme/randread_4k_qd$qd/2_jobs_kernel", peer => 'kernel nvme + fio (libaio), 1 job',
                  ns_per_op => $k2->{ns} + 0, peer_ns_per_op => $k1->{ns} + 0,
                  ratio => $k2->{ns} / $k1->{ns} };
}
@rows = sort { $a->{name} cmp $b->{name} } @rows;
if (@rows) {
    my $nw = 4; my $pw = 4;
    for (@rows) { $nw = length $_->{name} if length $_->{name} > $nw; $pw = length $_->{peer} if length $_->{peer} > $pw }
    printf "%-${nw}s  %-${pw}s  %12s  %12s  %7s\n", 'name', 'peer', 'dmakit ns/op', 'peer ns/op', 'ratio';
    print '-' x ($nw + $pw + 41), "\n";
    printf "%-${nw}s  %-${pw}s  %12.1f  %12.1f  %7.3f\n", @{$_}{qw(name peer ns_per_op peer_ns_per_op ratio)} for @rows;
}
if (@why) {
    print "guest/run: the comparison could not be made: $_\n" for @why;
    exit 1;
}
open(my $o, '>', $out) or die "compare: $out: $!";
print $o JSON::PP->new->pretty->canonical->encode(\@rows);
close $o or die "compare: $out: $!";
print "guest/run: wrote $out\n";
