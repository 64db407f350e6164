#!/usr/bin/perl
# Allocation-heavy Perl workload for the LD_PRELOAD comparison in
# scripts/preload-tests.sh: hashes, regular expressions, string building,
# sorting and nested structures.  Output is deterministic (fixed PRNG, sorted
# keys) and must be identical with and without the preload.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

# our own linear congruential generator, independent of perl's rand()
my $state = 12345;
sub rnd { $state = ($state * 1103515245 + 12345) % 2147483648; return $state; }

my $digest = Digest::MD5->new;
sub feed {
    my ($label, $text) = @_;
    $digest->add($label, $text);
    printf "%s: %s\n", $label, substr(md5_hex($text), 0, 16);
}

# 1. a large hash, partly deleted, then summarised in key order
my %h;
for my $i (1 .. 80_000) {
    my $k = sprintf("k%06d_%x", $i, rnd() % 65536);
    $h{$k} = { n => $i, s => ("ab" x ($i % 11)), l => [ map { $_ * $i } 1 .. ($i % 5) ] };
}
for my $k (keys %h) { delete $h{$k} if $h{$k}{n} % 3 == 0; }
my $sum = 0;
my @lines;
for my $k (sort keys %h) {
    my $v = $h{$k};
    $sum += $v->{n} + length($v->{s}) + scalar(@{ $v->{l} });
    push @lines, "$k=$v->{n}" if @lines < 3000;
}
feed("hash", join(",", scalar(keys %h), $sum, @lines));

# 2. regular expressions over generated text
my @words;
for (1 .. 40_000) {
    my $len = 1 + rnd() % 10;
    push @words, join("", map { chr(97 + rnd() % 26) } 1 .. $len);
}
my $text = join(" ", @words);
my %freq;
$freq{$1}++ while $text =~ /\b([a-z]{3,5})\b/g;
my @top = (sort { $freq{$b} <=> $freq{$a} || $a cmp $b } keys %freq)[0 .. 49];
(my $t2 = $text) =~ s/([aeiou])([^aeiou ]+)/uc($2).$1/ge;
my @split = split /[aeiou]+/, $t2;
feed("regex", join(",", scalar(keys %freq), @top, length($t2), scalar(@split)));

# 3. string building: repeated concatenation, substr edits, join/split
my $buf = "";
for my $i (1 .. 50_000) {
    $buf .= sprintf("%d:%s;", $i, "z" x ($i % 17));
    substr($buf, rnd() % length($buf), 1, "Q") if $i % 100 == 0;
}
my @parts = split /;/, $buf;
my $rebuilt = join("|", reverse @parts);
feed("strings", join(",", length($buf), scalar(@parts), md5_hex($rebuilt)));

# 4. arrays of arrays, sorting with a custom comparator, churn
my @recs;
for my $i (1 .. 50_000) {
    push @recs, [ rnd() % 1000, "r$i", [ (rnd() % 100) x (rnd() % 8) ] ];
    splice(@recs, rnd() % scalar(@recs), 1) if $i % 4 == 0;
}
my @sorted = sort { $a->[0] <=> $b->[0] || $a->[1] cmp $b->[1] } @recs;
feed("arrays", join(",", scalar(@sorted), map { "$_->[0]/$_->[1]/" . scalar(@{ $_->[2] }) } @sorted[0 .. 999]));

print "digest: ", $digest->hexdigest, "\n";
