// askbuild fixture: the fmc command line (tclap + libxml2), CRLF like NXP fmc.
#include <iostream>
#include <string>
#include <tclap/CmdLine.h>
#include "fmc.h"

int main(int argc, char **argv)
{
	TCLAP::CmdLine cmd("fmc fixture", ' ', "1.0-" FMC_MACHINE);
	TCLAP::ValueArg<std::string> pdl("d", "pdl", "PDL file", false,
		"/etc/fmc/config/hxs_pdl_v3.xml", "file", cmd);
	TCLAP::ValueArg<std::string> cfg("c", "config", "config file", false, "", "file", cmd);
	TCLAP::ValueArg<std::string> pcd("p", "pcd", "PCD file", false, "", "file", cmd);
	cmd.parse(argc, argv);
	char buf[256];
	if (fmc_fixture_compile(pdl.getValue().c_str(), buf, sizeof buf) != 0) {
		std::cerr << "fmc fixture: cannot parse " << pdl.getValue() << std::endl;
		return 1;
	}
	std::cout << "fmc fixture machine=" << FMC_MACHINE << " " << buf << std::endl;
	return 0;
}
